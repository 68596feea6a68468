"""The benchmark suites the plugin runs (installed as ``pytest_unsafebench.suites``)."""
