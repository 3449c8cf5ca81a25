"""Backend2 stand-in: the FastAPI api (app.main) and the Dramatiq actors (app.tasks)."""
