"""Glue to other frameworks and protocols, built on the public API of langchain_spthink."""
