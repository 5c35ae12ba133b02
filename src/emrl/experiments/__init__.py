"""emrl.experiments"""
