"""pyllmops.models"""
