"""Chains over the knowledge base: answering with citations, condensing, conversations."""

from kb_assistant.chains.rag import Answer, Citation, RagChain, RagParams, Turn
from kb_assistant.chains.sessions import ChatStore, SessionInfo

__all__ = ["Answer", "ChatStore", "Citation", "RagChain", "RagParams", "SessionInfo", "Turn"]
