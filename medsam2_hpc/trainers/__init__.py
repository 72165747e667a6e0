"""One trainer module per model kind; each exposes check(task) and train(task, run)."""
