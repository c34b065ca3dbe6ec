"""Drivers read appliances over a bus (GPIO, serial/Modbus, BLE) and yield `koto.reading.Reading`s.

A driver knows a bus and a device model and nothing about functions or money. Imports neither `metering` nor
`gateway`; hardware libraries are imported only inside the backend module that needs them.
"""
