"""emrl.objectives"""
