"""Data: DICOM reading, synthetic mammograms, importers, TFRecords, tf.data.

This package's __init__ imports nothing, so `keras_hourglass.data.dicom`
stays free of TensorFlow.
"""
