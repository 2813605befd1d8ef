"""Visitor-level facts, statistics, scorecards and trend reports."""
