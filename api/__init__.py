"""``kb serve``: the HTTP API of kb-assistant (OpenAI-compatible routes and native ones).

``kb_assistant.api.app.create_app`` builds it; ``kb_assistant.api.keys.KeyStore`` holds its API
keys. Nothing is imported here, so that ``kb serve keys ...`` does not load the web stack.
"""
