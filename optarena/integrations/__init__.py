"""Thin bridges from optarena's registry to the frameworks its users train with.

One module per framework; each imports its framework, so import the one you need (``import
optarena.integrations.ultralytics``). ``import optarena`` (and this package) never imports a framework.
"""
