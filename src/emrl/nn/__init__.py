"""emrl.nn"""
