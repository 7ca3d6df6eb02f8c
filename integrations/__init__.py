"""Framework integrations: :mod:`ctxzip.integrations.langchain` and :mod:`ctxzip.integrations.llamaindex`.

Each module needs its extra (``pip install 'ctxzip[langchain]'`` / ``'ctxzip[llamaindex]'``).
"""
