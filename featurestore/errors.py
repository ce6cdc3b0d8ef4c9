"""Errors users can act on. The CLI prints their message and exits non-zero; nothing is half-written."""


class FeatureStoreError(Exception):
    """Base of the errors that name what is wrong with the user's input or configuration."""


class DefinitionError(FeatureStoreError):
    """A definition in the registry cannot be used as declared."""


class UnknownNameError(FeatureStoreError):
    """A feature service, feature view or feature that the registry does not have."""


class UnknownFeatureViewError(UnknownNameError):
    """A feature view name that is not in the registry."""


class InputDataError(FeatureStoreError):
    """Input data is missing, empty or does not match its declared schema."""


class RangeError(FeatureStoreError):
    """A time range that is empty or reversed."""


class EntityKeyError(FeatureStoreError):
    """Entity keys or request fields of a lookup are missing, unknown or of the wrong type."""


class TooManyEntitiesError(FeatureStoreError):
    """A lookup asks for more entities than the server allows in one request."""


class TooManyFeaturesError(FeatureStoreError):
    """A lookup names more features than the server allows in one request."""
