"""Seeing the queue: ``status`` (terminal tables) and the web dashboard."""
