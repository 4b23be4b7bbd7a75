"""pyllmops.nn"""
