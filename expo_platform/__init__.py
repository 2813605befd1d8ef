"""Expo's shared library: business logic, stores and tools that both layers call."""
