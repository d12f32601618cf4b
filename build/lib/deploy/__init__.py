"""Ray Serve deployment of the speckv engine (OpenAI-compatible HTTP): see :mod:`deploy.app`."""
