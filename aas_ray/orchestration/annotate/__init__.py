"""The pair annotation page: ``aas-ray annotate`` and ``aas-ray run --serve``."""
