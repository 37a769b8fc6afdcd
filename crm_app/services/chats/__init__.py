"""The inbox: the bot's conversations in amoCRM's chats (Chats API) and managers' replies."""
