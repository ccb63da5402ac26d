"""Fitting: data and losses meet the backends' training programs.

``data`` (datasets) and ``sampling`` (starts) feed the ``trainer``, which builds a
``spec`` of the fit and runs it in ``loop``s over a backend's training program, in this
process or in chunks through the ``executor`` (with ``run_folder`` and ``dask``); it
returns ``results`` (tables, save/load) that draw ``plots``.
"""
