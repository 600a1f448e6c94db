"""Commands as pure functions on trees: each takes trees and options and returns a result object."""
