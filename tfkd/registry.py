"""Name -> object registries, so configs and flags pick components by name.

Every registry lookup error names the registry and lists what is available, so a typo in
``--method`` or ``config.model.arch`` fails before any data is loaded.
"""


class Registry:
    def __init__(self, kind):
        self.kind = kind
        self._entries = {}

    def register(self, name):
        def decorator(obj):
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return decorator

    def get(self, name):
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(
                f"unknown {self.kind} {name!r}; expected one of: {', '.join(sorted(self._entries))}"
            ) from None

    def names(self):
        return sorted(self._entries)

    def __contains__(self, name):
        return name in self._entries


METHODS = Registry("method")
METHOD_CONFIGS = Registry("method")  # each method's config section (tfkd.method_config), TF-free
BACKBONES = Registry("backbone")
DATASETS = Registry("dataset")
