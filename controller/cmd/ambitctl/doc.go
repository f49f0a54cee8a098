// Command ambitctl is the command-line tool for operating an Ambit mesh.
package main
