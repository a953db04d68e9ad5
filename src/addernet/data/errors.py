from addernet.errors import UserError


class DataError(UserError, RuntimeError):
    """Data is missing, unreadable or laid out wrongly; the message says what was looked for and how to fix it."""
