"""Simulated AI agents (one HTTP process per version) and a traffic driver that follows an HTTPRoute."""
