"""Worker-side applications for the Celery and Dramatiq benchmark peers (see ``bench/peers.py``)."""
