"""Errors users can act on. The CLI prints their message and exits non-zero; nothing is half-written."""


class FeatureStoreError(Exception):
    """Base of the errors that name what is wrong with the user's input or configuration."""


class DefinitionError(FeatureStoreError):
    """A definition in the registry cannot be used as declared."""


class UnknownFeatureViewError(FeatureStoreError):
    """A feature view name that is not in the registry."""


class InputDataError(FeatureStoreError):
    """Input data is missing, empty or does not match its declared schema."""


class RangeError(FeatureStoreError):
    """A time range that is empty or reversed."""
