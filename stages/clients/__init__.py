"""One client per provider; each call takes a ``Gate`` (the task context) for the shared rate limiter."""
