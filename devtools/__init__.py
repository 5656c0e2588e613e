"""The workbench beside the gateway: local stand-ins and process helpers.

The LLM stand-in (``fake_llm``), the platforms' API stand-ins (``fake_platforms``), the aiohttp
serving helper they share (``aioserve``) and the real-process launcher of the end-to-end tests and
the bench (``stack``). ``make run``, the tests and the bench use them; the installed package and the
production image do not carry them, and the gateway never imports them (an import-linter contract).
"""
