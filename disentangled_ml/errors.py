"""The exception of the bottom layer, in a module that imports nothing.

:class:`ConfigError` is raised by :mod:`disentangled_ml.config` and by
:mod:`disentangled_ml.pitch_bands`, which config asks for its band count; it lives here
so that neither imports the other's layer. Import it from :mod:`disentangled_ml.config`,
as every caller does.
"""


class ConfigError(ValueError):
    """A configuration value is out of range or inconsistent; the message names it."""
