"""motorpool's built-in backends. Each module registers one backend through the ``motorpool.backends``
entry point group, exactly as a third-party plugin does; nothing here is imported by motorpool's core."""
