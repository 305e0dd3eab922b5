"""Example apps: small, runnable lambdas that show the SDK at work."""
