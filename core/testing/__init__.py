"""motorpool's testing kit: the model zoo, the backend conformance suite and the pytest plugin."""
