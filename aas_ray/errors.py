"""The one base of the errors a user can act on."""


class AasRayError(Exception):
    """Bad input, configuration, dataset, model or tracking store: the message, one line,
    names what is wrong and how to go on; the command line prints it instead of a traceback."""
