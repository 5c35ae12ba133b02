"""emrl.control"""
