/* driver.c — a plain main() for the fuzz targets, so `make test` can replay
 * every committed corpus file through each target under AddressSanitizer and
 * UBSan without libFuzzer. Usage: replay_X FILE|DIR... ; each file is one
 * input, each directory is read one level deep. Exits 0 when every input
 * ran (a finding aborts through the sanitizers), 1 when an input could not
 * be read. Single-threaded. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

/* run_file: feed one file to the target. Returns 0, or -1 if unreadable.
 * Inputs above 16 MiB are refused (corpora hold small files). */
static int run_file(const char *path) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) {
    perror(path);
    return -1;
  }
  size_t cap = 1u << 16, len = 0;
  uint8_t *buf = malloc(cap);
  while (buf != NULL) {
    size_t n = fread(buf + len, 1, cap - len, f);
    len += n;
    if (n == 0)
      break;
    if (len == cap) {
      if (cap >= (16u << 20)) {
        fprintf(stderr, "%s: larger than 16 MiB\n", path);
        free(buf);
        buf = NULL;
        break;
      }
      uint8_t *nb = realloc(buf, cap * 2);
      if (nb == NULL) {
        free(buf);
        buf = NULL;
        break;
      }
      buf = nb;
      cap *= 2;
    }
  }
  int bad = ferror(f) || buf == NULL;
  fclose(f);
  if (bad) {
    free(buf);
    fprintf(stderr, "%s: cannot read\n", path);
    return -1;
  }
  /* an exact-size copy, so ASan catches a read one past the input */
  uint8_t *exact = malloc(len ? len : 1);
  if (exact == NULL) {
    free(buf);
    return -1;
  }
  memcpy(exact, buf, len);
  free(buf);
  LLVMFuzzerTestOneInput(exact, len);
  free(exact);
  return 0;
}

/* cmp_names: qsort comparator, so a directory replays in a fixed order. */
static int cmp_names(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* run_dir: every regular file of a directory, in name order. Returns the
 * number of inputs run, or -1 on an error. */
static int run_dir(const char *path) {
  DIR *d = opendir(path);
  if (d == NULL) {
    perror(path);
    return -1;
  }
  char **names = NULL;
  size_t n = 0, cap = 0;
  struct dirent *de;
  int rc = 0;
  while ((de = readdir(d)) != NULL && rc == 0) {
    if (de->d_name[0] == '.')
      continue;
    if (n == cap) {
      cap = cap ? cap * 2 : 64;
      char **nn = realloc(names, cap * sizeof *nn);
      if (nn == NULL) {
        rc = -1;
        break;
      }
      names = nn;
    }
    size_t len = strlen(path) + strlen(de->d_name) + 2;
    names[n] = malloc(len);
    if (names[n] == NULL) {
      rc = -1;
      break;
    }
    snprintf(names[n], len, "%s/%s", path, de->d_name);
    n++;
  }
  closedir(d);
  if (n > 0)
    qsort(names, n, sizeof *names, cmp_names);
  int ran = 0;
  for (size_t i = 0; i < n; i++) {
    struct stat st;
    if (rc == 0 && stat(names[i], &st) == 0 && S_ISREG(st.st_mode)) {
      if (run_file(names[i]) != 0)
        rc = -1;
      else
        ran++;
    }
    free(names[i]);
  }
  free(names);
  return rc < 0 ? -1 : ran;
}

int main(int argc, char **argv) {
  int total = 0;
  if (LLVMFuzzerInitialize)
    LLVMFuzzerInitialize(&argc, &argv);
  for (int i = 1; i < argc; i++) {
    struct stat st;
    if (stat(argv[i], &st) != 0) {
      perror(argv[i]);
      return 1;
    }
    int n = S_ISDIR(st.st_mode) ? run_dir(argv[i]) : run_file(argv[i]) == 0;
    if (n < 0)
      return 1;
    total += n;
  }
  printf("%s: %d input(s) replayed\n", argv[0], total);
  return 0;
}
