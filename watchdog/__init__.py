"""erpwatch: supervise an ERP backend, detect crashes and hangs, restart within limits."""

__version__ = "0.1.0"
