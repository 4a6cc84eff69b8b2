"""pp's exception classes."""
import concurrent.futures

CancelledError = concurrent.futures.CancelledError


class PPError(Exception):
    """Base class of pp's own errors."""


class WorkerLostError(PPError):
    """The job's worker process died too many times while running it."""

    def __init__(self, message, exitstatus=None, termsignal=None):
        super().__init__(message)
        self.exitstatus = exitstatus
        self.termsignal = termsignal


class JobTimeoutError(PPError, TimeoutError):
    """The job ran longer than its timeout (submit(timeout=) or
    Server(job_timeout=)) and was stopped; its worker was replaced."""


class JobAbortedError(PPError):
    """The job was aborted (job.abort() or Server.abort())."""


class DestroyedError(PPError):
    """The Server was destroyed before the job finished."""


class SerializationError(PPError):
    """A function, or a job's result, could not be serialized."""


class RemoteError(PPError):
    """A job raised an exception that could not be rebuilt in the client."""

    def __init__(self, message, type_name=None, remote_traceback=None):
        super().__init__(message)
        self.type_name = type_name
        self.remote_traceback = remote_traceback


class RemoteTraceback(Exception):
    """Carries the traceback text from the worker; set as __cause__."""

    def __init__(self, tb):
        super().__init__(tb)
        self.tb = tb

    def __str__(self):
        return self.tb
