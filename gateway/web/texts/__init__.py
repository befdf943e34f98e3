"""The dashboard's strings, one module per area (``EN`` and ``JA``); see ``gateway.web.i18n``."""
