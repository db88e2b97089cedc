"""Hostile inputs (issue 12): each case proves a bound where the resource is spent.

Memory bounds are proved with :func:`hostile.limits.memory_cap` (``RLIMIT_AS``): a case that
used gigabytes before its fix now fails cleanly under a cap of a few hundred megabytes.
Network cases use real servers on 127.0.0.1 only.
"""
