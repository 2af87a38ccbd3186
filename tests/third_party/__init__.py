"""Third-party test suites run against xce through thin shims (issue 15, item 6)."""
