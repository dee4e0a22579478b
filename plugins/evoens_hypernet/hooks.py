from evoens import hookimpl  # noqa: F401
