"""pyllmops.quant"""
