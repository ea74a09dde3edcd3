class UserError(Exception):
    """Bad input from the user (path, value, cluster address): printed as one line, exit status 2."""
