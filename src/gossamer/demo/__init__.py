"""The storefront demo: four tiny stdlib-only web apps that call each other by service name.

frontend → catalog, orders; orders → payments. They know nothing about the mesh: they read
``PORT`` and call ``http://<service>/...`` through ``HTTP_PROXY`` like any ordinary program.
"""
