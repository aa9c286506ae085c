"""
The HTTP/JSON API.
"""
