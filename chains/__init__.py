"""Chains over the knowledge base: answering with citations, the agent and its tools."""

from kb_assistant.chains.citations import Citation
from kb_assistant.chains.rag import Answer, RagChain, RagParams, Turn, history_from

__all__ = ["Answer", "Citation", "RagChain", "RagParams", "Turn", "history_from"]
