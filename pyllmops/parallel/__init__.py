"""pyllmops.parallel"""
