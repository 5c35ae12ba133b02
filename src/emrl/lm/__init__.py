"""emrl.lm"""
