"""pyllmops.tokenizer"""
